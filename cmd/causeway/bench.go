package main

import "context"

// runBench is a placeholder until its subcommand lands.
func runBench(ctx context.Context, args []string) error {
	return usagef("not built yet")
}
