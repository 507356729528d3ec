from edgert.cli import main

main()
