"""The optimizers: ASGD (with its shared pieces), gradient descent, L-BFGS and its line search."""
