module lmforge.local/pause

go 1.24
