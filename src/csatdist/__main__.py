from csatdist.cli import main

main()
