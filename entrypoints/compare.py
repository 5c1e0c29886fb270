"""MLproject entry point `compare`: modeldiff/platform/stages/compare.py does the work.

Generated from the stage list by `python -m modeldiff.platform.project`."""

from modeldiff.platform.stages import entry_point

main = entry_point("compare")

if __name__ == "__main__":
    main()
