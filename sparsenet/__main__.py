from sparsenet.cli import main

main()
