"""What the CLI turns off in third-party libraries before a command runs, and why.

transformers' own progress bars (weight loading, GGUF conversion) would interleave with ours,
which carry the rates that matter; its info/warning log lines are about loading internals a user
cannot act on. Warnings that one call raises are silenced at that call instead (see
``prunescope.recover.train.add_lora`` and ``prunescope.analysis.evaluate.make_lm``).
"""


def quiet_third_party() -> None:
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
