"""`python -m ambient` runs the `ambient` command line."""

from ambient.cli.main import main

if __name__ == "__main__":
    main()
