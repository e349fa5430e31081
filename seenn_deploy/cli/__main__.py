"""`python -m seenn_deploy.cli`."""

from seenn_deploy.cli import main

main()
