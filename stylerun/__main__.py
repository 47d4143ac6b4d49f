from stylerun.cli.app import main

main()
