package main

import "context"

// runLab is a placeholder until its subcommand lands.
func runLab(ctx context.Context, args []string) error {
	return usagef("not built yet")
}
