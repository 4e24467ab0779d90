"""`python -m tunegen.compiler` is the `tunegen` command."""

from tunegen.compiler.cli import main

main()
