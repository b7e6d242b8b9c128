package capabilities

// WithOpener makes Options whose perf_event_open is fake, for tests that
// play other machines.
func WithOpener(o Options, open func(typ uint32, config uint64, excludeHost, branchStack bool) error) Options {
	o.open = func(p probeAttr) error { return open(p.Type, p.Config, p.ExcludeHost, p.BranchStack) }
	return o
}
