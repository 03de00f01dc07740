"""The circuit layer's names (light: no torch or TransformerLens import), for the CLI's help."""

METHODS = ("eap", "eap_ig_inputs", "eap_ig_activations", "clean_corrupted", "exact")
LINEAR_METHODS = ("eap", "clean_corrupted", "eap_ig_inputs")  # computable without split forwards
SELECTIONS = ("topn", "threshold", "greedy", "acdc")
ABLATIONS = ("patch", "mean", "zero")
