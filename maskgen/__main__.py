from maskgen.cli import main

main()
