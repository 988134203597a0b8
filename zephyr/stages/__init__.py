"""One module per stage, each with the same skeleton: args, logging, seed, data, model, trainer, train, save."""
