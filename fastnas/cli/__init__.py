"""The command-line layer: the only modules that run as programs. Each command module has
``parse_args`` and ``main(argv) -> exit code``; :mod:`.common` is the lifecycle they share."""
