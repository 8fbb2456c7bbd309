from edgefp.cli import main

main()
