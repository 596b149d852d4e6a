"""Developer tools run from the repository root (`make run`, `make demo`, `make test`'s set-up):
not part of the installed packages, and not imported by them."""
