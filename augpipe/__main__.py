from augpipe.cli.main import main

main()
