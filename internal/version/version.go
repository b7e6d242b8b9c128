// Package version holds the build's version, set by the linker:
//
//	-ldflags "-X github.com/sidewatch/sidewatch/internal/version.Version=v0.1.0"
package version

// Version of this build; "dev" when built without ldflags.
var Version = "dev"
