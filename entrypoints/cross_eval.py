"""MLproject entry point `cross_eval`: modeldiff/platform/stages/cross_eval.py does the work.

Generated from the stage list by `python -m modeldiff.platform.project`."""

from modeldiff.platform.stages import entry_point

main = entry_point("cross_eval")

if __name__ == "__main__":
    main()
