// Package trace reads and writes sidewatch trace files (format v1,
// docs/trace-format.md): CSV rows of per-vCPU counter values and overflow
// samples, preceded by "# key: value" metadata lines.
//
// The Reader streams: it holds one buffer (default 256 KiB, lines up to
// MaxLineBytes) and hands out rows whose byte slices alias that buffer, so a
// trace of any size is read in constant memory and with no allocation per
// row. Every syntax error is reported as "line N: reason".
//
// The Writer produces the same format, also without allocation per row.
//
// StreamTable interns (node, namespace, vmi, vcpu) keys met in rows into
// small integer ids and enforces the format's ordering rule: rows of one
// vCPU stream never go back in time.
package trace
