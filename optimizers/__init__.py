"""modelpress optimizers: a standalone library that turns a model file and a typed config
into a smaller/faster model file and the numbers that prove it. No database, no HTTP."""
