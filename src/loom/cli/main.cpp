// Placeholder entry point; replaced by the subcommand table.
int main() { return 0; }
