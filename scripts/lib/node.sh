# The Node.js the pinned npm packages need (oauth2-mock-server's and @noble's `engines`:
# ^20.19 || ^22.12 || >=24), said before npm installs them: npm only warns (EBADENGINE), at a log
# level the scripts hide, and the test or benchmark then fails later for no clear reason.
# Debian 13's nodejs is recent enough; Debian 12's is not (install a newer one, NodeSource's say).

# node_check WHO: exits naming WHO when the machine's node is not one of those.
node_check() {
    node -e 'const [a, b] = process.versions.node.split(".").map(Number);
             process.exit(a >= 24 || (a === 22 && b >= 12) || (a === 20 && b >= 19) ? 0 : 1)' 2>/dev/null \
        || { echo "$1: needs Node.js ^20.19, ^22.12 or 24 and later (found $(node --version 2>/dev/null || echo none))" >&2; exit 1; }
}
