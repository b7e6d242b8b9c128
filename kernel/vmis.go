package kernel

// vmiRegistry numbers VMIs for the kernel maps, which store a u32 per
// thread instead of a name. Numbers start at 1 (0 means "no VMI" in the
// programs) and are never reused while the agent runs, so a pair recorded
// under an old number can never be attributed to a newer VMI; names no
// thread or pair refers to any more are pruned.
type vmiRegistry struct {
	ids   map[string]uint32
	names map[uint32]string
	next  uint32
}

func newVMIRegistry() vmiRegistry {
	return vmiRegistry{ids: map[string]uint32{}, names: map[uint32]string{}, next: 1}
}

// id returns vmi's number, assigning one if needed; ok is false when the
// 32-bit numbers ran out.
func (r *vmiRegistry) id(vmi string) (uint32, bool) {
	if id, ok := r.ids[vmi]; ok {
		return id, true
	}
	if r.next == 0 {
		return 0, false
	}
	id := r.next
	r.next++
	r.ids[vmi] = id
	r.names[id] = vmi
	return id, true
}

func (r *vmiRegistry) name(id uint32) string { return r.names[id] }

// prune forgets every number not in keep.
func (r *vmiRegistry) prune(keep map[uint32]bool) {
	for id, name := range r.names {
		if !keep[id] {
			delete(r.names, id)
			delete(r.ids, name)
		}
	}
}
