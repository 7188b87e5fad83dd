"""The commands other than train and resume: eval, reproduce, plot, diagnose and list, each a
thin use of the layers below (rlcli.cli dispatches to them), and the sweep summaries."""
