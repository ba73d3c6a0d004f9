from searcher.cli import main

main()
