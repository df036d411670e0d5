"""python -m anchord: the same as the anchord command."""

from anchord.cli import main

main()
