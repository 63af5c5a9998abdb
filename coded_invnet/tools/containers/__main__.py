"""python -m coded_invnet.tools.containers build|up|down."""

from coded_invnet.tools.containers.cli import main

if __name__ == "__main__":
    main()
