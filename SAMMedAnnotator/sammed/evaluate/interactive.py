"""Interactive protocol (placeholder, filled in next)."""


def add_eval_args(p):
    p.add_argument("image")
    p.add_argument("labels")


def run_eval_cli(args):
    raise ValueError("not implemented yet")
