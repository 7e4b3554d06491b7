# f2bext: `make demo` runs the namespace lab, `make test` the whole suite (both need root).
PYTHON      ?= /usr/bin/python3
PREFIX      ?= /usr
SYSCONFDIR  ?= /etc
DESTDIR     ?=
BINDIR      ?= $(PREFIX)/bin
# Where Debian's /usr/bin/python3 (the one fail2ban runs on) finds distribution packages.
PYLIBDIR    ?= $(PREFIX)/lib/python3/dist-packages
F2B_CONFDIR  = $(DESTDIR)$(SYSCONFDIR)/fail2ban

.PHONY: deps test unit demo install uninstall clean

# Debian packages the project needs (fail2ban is not on PyPI; the bindings must match the system).
DEBS = fail2ban nftables python3-nftables python3-pyroute2 conntrack iproute2 iptables ipset \
       python3-pytest python3-hypothesis netbase procps

deps:
	@missing=$$(for p in $(DEBS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

test: deps
	$(PYTHON) -m pytest -v -p no:cacheprovider -rs tests

unit:
	$(PYTHON) -m pytest -q -p no:cacheprovider tests/test_input.py tests/test_nft_rules.py

demo: deps
	$(PYTHON) -m f2bext demo

install:
	install -d $(DESTDIR)$(PYLIBDIR)/f2bext/backends $(DESTDIR)$(BINDIR)
	install -m 0644 f2bext/*.py $(DESTDIR)$(PYLIBDIR)/f2bext/
	install -m 0644 f2bext/backends/*.py $(DESTDIR)$(PYLIBDIR)/f2bext/backends/
	printf '#!%s\nimport sys\nfrom f2bext.cli import main\nsys.exit(main())\n' $(PYTHON) > $(DESTDIR)$(BINDIR)/f2bext
	chmod 0755 $(DESTDIR)$(BINDIR)/f2bext
	install -d $(F2B_CONFDIR)/action.d $(F2B_CONFDIR)/filter.d $(F2B_CONFDIR)/jail.d
	install -m 0644 action.d/f2bext-* $(F2B_CONFDIR)/action.d/
	for f in filter.d/f2bext-* jail.d/f2bext-*; do [ -e "$$f" ] && install -m 0644 "$$f" $(F2B_CONFDIR)/$$(dirname $$f)/ || true; done

uninstall:
	rm -rf $(DESTDIR)$(PYLIBDIR)/f2bext
	rm -f $(DESTDIR)$(BINDIR)/f2bext $(F2B_CONFDIR)/action.d/f2bext-* $(F2B_CONFDIR)/filter.d/f2bext-* $(F2B_CONFDIR)/jail.d/f2bext-*

clean:
	rm -rf build dist *.egg-info .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
