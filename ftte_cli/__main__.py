from ftte_cli.cli import main

main()
