################################################################################
#
# toolbox
#
################################################################################

TOOLBOX_VERSION = 0.1.0
# A release tarball; for a local checkout use TOOLBOX_OVERRIDE_SRCDIR in
# local.mk (or TOOLBOX_SITE_METHOD = local with TOOLBOX_SITE = /path/to/toolbox).
TOOLBOX_SITE = https://example.invalid/toolbox/releases
TOOLBOX_SOURCE = toolbox-$(TOOLBOX_VERSION).tar.gz
TOOLBOX_LICENSE = MIT
TOOLBOX_LICENSE_FILES = LICENSE

TOOLBOX_APPLETS = \
	$(if $(BR2_PACKAGE_TOOLBOX_NBD),nbd) \
	$(if $(BR2_PACKAGE_TOOLBOX_TIMESYNCD),timesyncd) \
	$(if $(BR2_PACKAGE_TOOLBOX_DNS),dns) \
	$(if $(BR2_PACKAGE_TOOLBOX_ZCIP),zcip) \
	$(if $(BR2_PACKAGE_TOOLBOX_IPMGMTD),ipmgmtd) \
	$(if $(BR2_PACKAGE_TOOLBOX_SVCHOST),svchost) \
	$(if $(BR2_PACKAGE_TOOLBOX_INIT),init)
TOOLBOX_FEATURES = $(subst $(space),$(comma),$(strip $(TOOLBOX_APPLETS)))

TOOLBOX_CARGO_BUILD_OPTS = --no-default-features --features $(TOOLBOX_FEATURES)
TOOLBOX_CARGO_INSTALL_OPTS = --no-default-features --features $(TOOLBOX_FEATURES)

# ipmgmtd drops to netadm; members of netadm and svcadm may change the IP
# configuration (ipadm) and control services (sc).
TOOLBOX_USERS = \
	$(if $(BR2_PACKAGE_TOOLBOX_IPMGMTD),netadm -1 netadm -1 * - - - toolbox ipmgmtd) \
	$(if $(BR2_PACKAGE_TOOLBOX_SVCHOST),- - svcadm -1 * - - - toolbox svchost control)

# cargo-package installs /usr/bin/toolbox; a link per applet it carries.
define TOOLBOX_INSTALL_APPLET_LINKS
	for applet in $(filter-out dns init,$(TOOLBOX_APPLETS)) \
		$(if $(BR2_PACKAGE_TOOLBOX_IPMGMTD),ipadm) \
		$(if $(BR2_PACKAGE_TOOLBOX_SVCHOST),sc); do \
		ln -sf toolbox $(TARGET_DIR)/usr/bin/$$applet || exit 1; \
	done
	$(if $(BR2_PACKAGE_TOOLBOX_INIT),ln -sf usr/bin/toolbox $(TARGET_DIR)/init)
	$(if $(BR2_PACKAGE_TOOLBOX_TIMESYNCD), \
		$(INSTALL) -D -m 0644 $(@D)/scripts/timesyncd.conf \
			$(TARGET_DIR)/etc/toolbox/timesyncd.conf)
	$(if $(BR2_PACKAGE_TOOLBOX_ZCIP), \
		$(INSTALL) -D -m 0755 $(@D)/scripts/zcip.script \
			$(TARGET_DIR)/etc/toolbox/zcip.script)
endef
TOOLBOX_POST_INSTALL_TARGET_HOOKS += TOOLBOX_INSTALL_APPLET_LINKS

define TOOLBOX_INSTALL_INIT_SYSTEMD
	for unit in $(@D)/scripts/dist/systemd/*.service; do \
		$(INSTALL) -D -m 0644 $$unit $(TARGET_DIR)/usr/lib/systemd/system/$$(basename $$unit) || exit 1; \
	done
	$(INSTALL) -D -m 0644 $(@D)/scripts/dist/systemd/toolbox.sysusers \
		$(TARGET_DIR)/usr/lib/sysusers.d/toolbox.conf
	$(INSTALL) -D -m 0644 $(@D)/scripts/dist/systemd/toolbox.tmpfiles \
		$(TARGET_DIR)/usr/lib/tmpfiles.d/toolbox.conf
endef

define TOOLBOX_INSTALL_INIT_OPENRC
	for script in $(@D)/scripts/dist/openrc/*; do \
		$(INSTALL) -D -m 0755 $$script $(TARGET_DIR)/etc/init.d/$$(basename $$script) || exit 1; \
	done
endef

define TOOLBOX_INSTALL_INIT_SYSV
	for script in $(@D)/scripts/dist/sysvinit/*; do \
		$(INSTALL) -D -m 0755 $$script $(TARGET_DIR)/etc/init.d/$$(basename $$script) || exit 1; \
	done
endef

$(eval $(cargo-package))
