from xdrec.cli import main

main()
