"""MLproject entry point `plagiarism_check`: modeldiff/platform/stages/plagiarism_check.py does the work.

Generated from the stage list by `python -m modeldiff.platform.project`."""

from modeldiff.platform.stages import entry_point

main = entry_point("plagiarism_check")

if __name__ == "__main__":
    main()
