"""AIF: AI feedback. Generators answer every prompt, a judge rates the answers, binarization makes pairs."""
