"""One module per stage, each with the same skeleton: args, logging, seed, data, model, trainer, train, save.

The table of training stages lives here, importing nothing: the command line, the launcher, the planner and the
pipeline read it without loading torch or TRL."""

# command -> label in logs and model cards; each is zephyr/stages/<command>.py with CONFIG_CLASSES and main(argv)
TRAINING_STAGES: dict[str, str] = {
    "sft": "dSFT",
    "dpo": "dDPO",
    "orpo": "ORPO",
    "simpo": "SimPO",
    "kto": "KTO",
    "rm": "reward model",
}
