# f2bext: `make demo` runs the namespace lab, `make test` the whole suite (both need root); `make unit`
# the pure tests of tests/unit, as any user.
PYTHON      ?= /usr/bin/python3
PREFIX      ?= /usr
SYSCONFDIR  ?= /etc
DESTDIR     ?=
BINDIR      ?= $(PREFIX)/bin
MANDIR      ?= $(PREFIX)/share/man
# Where the system's python3 (the one fail2ban runs on) imports from: Debian's shared dist-packages
# for /usr, PREFIX's versioned one otherwise (on Debian's path for /usr/local).
PYVER        = $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
PYLIBDIR    ?= $(if $(filter /usr,$(PREFIX)),/usr/lib/python3/dist-packages,$(PREFIX)/lib/python$(PYVER)/dist-packages)
F2B_CONFDIR  = $(DESTDIR)$(SYSCONFDIR)/fail2ban
# What we ship into /etc/fail2ban (never *.local: those are the admin's). debian/rules and the
# RPM spec install the same globs.
CONF_GLOBS   = action.d/f2bext-*.conf action.d/f2bext-*.py filter.d/f2bext-*.conf jail.d/f2bext-*.conf
CONF_FILES   = $(wildcard $(CONF_GLOBS))
PY_FILES     = $(shell find f2bext -name '*.py')
VERSION      = $(shell sed -n 's/^__version__ = "\(.*\)"$$/\1/p' f2bext/__init__.py)
# Packages are built from a copy of the working tree (uncommitted edits included) in PKGWORK and
# land in PKGOUT; the checkout itself is left as it was.
PKGWORK     ?= build/pkg
PKGOUT      ?= dist
SNAPSHOT     = tar -c --exclude-vcs --exclude=./build --exclude=./dist --exclude=./bench/out \
               --exclude=.pytest_cache --exclude=__pycache__ --exclude='*.egg-info'
RPMTOP       = $(abspath $(PKGWORK))/rpm
# Package builds see the system's interpreters only (pybuild runs `python3.11` from PATH).
PKGENV       = env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL PATH=/usr/sbin:/usr/bin:/sbin:/bin
# Without Fedora's python macros (rpmbuild on Debian) the spec builds with stand-ins for them, and
# with no rpm database to hold its build dependencies.
RPMFLAGS    ?= $(if $(shell rpm --eval '%{?pyproject_wheel}' 2>/dev/null),,--nodeps --define 'f2bext_fallback_macros $(abspath packaging/rpm-fallback.macros)')

.PHONY: deps debs test unit demo bench install uninstall clean

# Debian packages the project needs (fail2ban is not on PyPI; the bindings must match the system).
DEBS = fail2ban nftables python3-nftables python3-pyroute2 conntrack iproute2 iptables ipset \
       python3-pytest python3-hypothesis netbase procps redis-server python3-redis openssl \
       docker.io busybox-static mount firewalld ufw dbus

# What .ci/package builds and checks the packages with (the Debian 13 leg bakes these into its root).
PKG_DEBS = build-essential debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools lintian rpm make

# The package lists, for CI's Debian 13 root.
debs:
	@echo $(DEBS) $(PKG_DEBS)

deps:
	@tools/install-deps $(DEBS)

test: deps
	$(PYTHON) -m pytest -v -p no:cacheprovider -rs tests

unit:
	$(PYTHON) -m pytest -q -p no:cacheprovider tests/unit

demo: deps
	$(PYTHON) -m f2bext demo

# Side by side with fail2ban's stock actions, in namespaces, real fail2ban-server (about 24 minutes
# on 2 cores, 1,000,000 bans and the fleet included); writes bench/out/ (results.json,
# tables.md, restore.png). `make bench BENCHFLAGS=--record` also keeps bench/results/<commit>.json.
BENCH_DEBS = python3-matplotlib
bench: deps
	@dpkg-query -W -f='$${Status}\n' $(BENCH_DEBS) 2>/dev/null | grep -q '^install ok installed' || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(BENCH_DEBS))
	$(PYTHON) bench/run.py $(BENCHFLAGS)

install: man
	rm -rf $(DESTDIR)$(PYLIBDIR)/f2bext
	install -d -m 0755 $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)/man1 $(addprefix $(F2B_CONFDIR)/,action.d filter.d jail.d) \
	  $(addprefix $(DESTDIR)$(PYLIBDIR)/,$(sort $(dir $(PY_FILES))))
	for f in $(PY_FILES); do install -m 0644 "$$f" "$(DESTDIR)$(PYLIBDIR)/$$f"; done
	printf '#!%s\nimport sys\nfrom f2bext.cli import main\nsys.exit(main())\n' $(PYTHON) > $(DESTDIR)$(BINDIR)/f2bext
	chmod 0755 $(DESTDIR)$(BINDIR)/f2bext
	install -m 0644 build/man/f2bext.1 $(DESTDIR)$(MANDIR)/man1/f2bext.1
	for f in $(CONF_FILES); do install -m 0644 "$$f" "$(F2B_CONFDIR)/$$f"; done
	@[ -n "$(DESTDIR)" ] || (cd / && env -u PYTHONPATH $(PYTHON) -c 'import f2bext; assert f2bext.__file__ == "$(PYLIBDIR)/f2bext/__init__.py"' 2>/dev/null) || \
	  echo "warning: $(PYTHON) does not import f2bext from $(PYLIBDIR): fail2ban will not find it (set PYLIBDIR)"

uninstall:
	rm -rf $(DESTDIR)$(PYLIBDIR)/f2bext
	rm -f $(DESTDIR)$(BINDIR)/f2bext $(DESTDIR)$(MANDIR)/man1/f2bext.1 $(addprefix $(F2B_CONFDIR)/,$(CONF_GLOBS)) \
	  $(F2B_CONFDIR)/action.d/__pycache__/f2bext-*.pyc

.PHONY: man deb rpm

# f2bext(1), generated from the command's own --help.
man:
	install -d build/man
	$(PYTHON) packaging/manpage.py > build/man/f2bext.1.tmp
	mv build/man/f2bext.1.tmp build/man/f2bext.1

deb:
	rm -rf $(PKGWORK)/deb && mkdir -p $(PKGWORK)/deb/f2bext-$(VERSION) $(PKGOUT)
	$(SNAPSHOT) . | tar -x -C $(PKGWORK)/deb/f2bext-$(VERSION)
	cd $(PKGWORK)/deb/f2bext-$(VERSION) && $(PKGENV) dpkg-buildpackage -us -uc -b
	rm -f $(PKGOUT)/f2bext_*
	cp $(PKGWORK)/deb/f2bext_* $(PKGOUT)/

rpm:
	rm -rf $(RPMTOP) && mkdir -p $(RPMTOP)/SOURCES $(PKGOUT)
	$(SNAPSHOT) --transform 's,^\.,f2bext-$(VERSION),' . | gzip -n > $(RPMTOP)/SOURCES/f2bext-$(VERSION).tar.gz
	$(PKGENV) rpmbuild -bb --define '_topdir $(RPMTOP)' $(RPMFLAGS) packaging/f2bext.spec
	rm -f $(PKGOUT)/f2bext-*.rpm
	cp $(RPMTOP)/RPMS/noarch/f2bext-*.rpm $(PKGOUT)/

clean:
	rm -rf build dist *.egg-info .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
