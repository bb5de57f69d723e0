"""One module per subcommand. Each defines ``HELP`` (one line), ``add_arguments(parser)`` and
``main(args) -> int``."""
