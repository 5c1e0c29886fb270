"""MLproject entry point `annotate`: modeldiff/platform/stages/annotate.py does the work.

Generated from the stage list by `python -m modeldiff.platform.project`."""

from modeldiff.platform.stages import entry_point

main = entry_point("annotate")

if __name__ == "__main__":
    main()
