"""MLproject entry point `sample_outdist`: modeldiff/platform/stages/sample_outdist.py does the work.

Generated from the stage list by `python -m modeldiff.platform.project`."""

from modeldiff.platform.stages import entry_point

main = entry_point("sample_outdist")

if __name__ == "__main__":
    main()
