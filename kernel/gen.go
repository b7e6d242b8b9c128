package kernel

// The eBPF objects are compiled from kernel/*.bpf.c by bpf2go and committed,
// so building sidewatch needs no clang. `make generate-bpf` (part of
// `make generate`) rebuilds them with Debian's clang 14 and libbpf-dev 1.1
// headers, then records the sources' digest in bpf.sum, which
// TestGeneratedObjectsFresh compares so a changed .bpf.c without a rebuild
// fails `make test`.
//
// Only amd64: the programs read x86 KVM state and x86 pt_regs. cosched
// needs -mcpu=v3 for its compare-and-swap (Linux 5.12).

//go:generate go tool bpf2go -tags linux -target amd64 -go-package kernel -cflags "-O2 -g -Wall -Werror" buslock buslock.bpf.c
//go:generate go tool bpf2go -tags linux -target amd64 -go-package kernel -cflags "-O2 -g -Wall -Werror -mcpu=v3" cosched cosched.bpf.c
//go:generate go tool bpf2go -tags linux -target amd64 -go-package kernel -cflags "-O2 -g -Wall -Werror" sampler sampler.bpf.c
