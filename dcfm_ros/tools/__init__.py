"""Command-line tools: every console script's entry point and argument parsing, on top of the library
layers (model, engine, data, node, training, evaluation). No library module imports this package."""
