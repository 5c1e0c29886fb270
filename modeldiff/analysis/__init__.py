"""Analysis on top of the method: annotation with precision and recall (Sec. 3.4), plagiarism statistics and weight
relatedness (Sec. 4.3), and the token-level view (LMdiff). No MLflow, no Accelerate.

This file holds only what the config checks without importing torch: the annotator registry (lazy) and the
plagiarism modes.
"""

from __future__ import annotations

from modeldiff.plugins import Registry

# annotate.annotator: name -> factory(cfg, reference=None, judge=None) -> annotate(rows) -> one score in [0, 1] per
# row; `human` has no automatic scores (people fill a sheet); any module:function is called with the rows itself
ANNOTATORS = Registry(
    "annotate.annotator",
    {"human": None, "toy_rule": "modeldiff.analysis.annotate:toy_rule", "judge": "modeldiff.analysis.annotate:judge"},
)

# plagiarism.mode: the evidence a verdict uses (modeldiff.analysis.plagiarism.decide)
PLAGIARISM_MODES = ("combined", "black_box", "white_box")
