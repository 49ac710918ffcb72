"""learnloop: a fast, typed PyTorch training loop with fastai semantics."""
