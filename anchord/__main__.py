"""python -m anchord: the same as the anchord command."""

from anchord.entry import main

main()
