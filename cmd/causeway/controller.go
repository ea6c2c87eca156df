package main

import "context"

// runController is a placeholder until its subcommand lands.
func runController(ctx context.Context, args []string) error {
	return usagef("not built yet")
}
