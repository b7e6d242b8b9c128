package detect

import "sort"

func sortStable(idx []int, less func(a, b int) bool) { sort.SliceStable(idx, less) }
