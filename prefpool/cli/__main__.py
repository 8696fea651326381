from prefpool.cli import main

main()
