package guest

import (
	"os"
	"strconv"
)

func readFile(p string) (string, error) {
	b, err := os.ReadFile(p)
	return string(b), err
}

func itoa(i int) string { return strconv.Itoa(i) }
