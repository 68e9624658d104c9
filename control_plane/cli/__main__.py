from control_plane.cli.launch import main

main()
