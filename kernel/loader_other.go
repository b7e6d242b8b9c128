//go:build !linux || !amd64

package kernel

import "context"

// Loader is unavailable off linux/amd64: Load returns ErrNotSupported.
type Loader struct{}

// Load returns ErrNotSupported.
func Load(context.Context, Options) (*Loader, error) { return nil, ErrNotSupported }

func (*Loader) Close() error                            { return nil }
func (*Loader) Status() Status                          { return Status{} }
func (*Loader) ProgramErr(string) error                 { return ErrNotSupported }
func (*Loader) Topology() Topology                      { return Topology{} }
func (*Loader) KVMLayout() KVMLayout                    { return KVMLayout{} }
func (*Loader) WatchThread(int, string) error           { return ErrNotSupported }
func (*Loader) ForgetThread(int) error                  { return ErrNotSupported }
func (*Loader) Watched() int                            { return 0 }
func (*Loader) ReadLockCounts() ([]LockCounts, error)   { return nil, ErrNotSupported }
func (*Loader) ReadCoScheduling() ([]CoSchedule, error) { return nil, ErrNotSupported }
func (*Loader) AttachSampler(int, uint16) error         { return ErrNotSupported }
func (*Loader) DetachSampler(int) error                 { return ErrNotSupported }
func (*Loader) ReadSampleBins() (SampleBins, error)     { return SampleBins{}, ErrNotSupported }
func (*Loader) ReadStats() (Stats, error)               { return Stats{}, ErrNotSupported }
