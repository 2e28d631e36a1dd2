"""`python -m injector` (and `accelerate launch -m injector train ...`)."""

from injector.cli import main

main()
